"""What the service observes about its requests: metrics, the latency SLI, request logs."""
