from vllm_service.cli import app

app()
