"""autotimm-deploy profiler: latency and throughput of deployed artifacts against eager PyTorch."""
