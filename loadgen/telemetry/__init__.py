"""Side tasks that sample the server while a run goes on: Prometheus parsing now, server metrics later."""
