"""Process-level infrastructure under every layer: ``cpu`` (allocator, threads, DataLoader
workers: ``tune_cpu``) and ``dist`` (rank / world size helpers that work without a process
group)."""

from facekd.runtime.cpu import RuntimeReport, bf16_support, torch_threads, tune_cpu, worker_init

__all__ = ["RuntimeReport", "bf16_support", "torch_threads", "tune_cpu", "worker_init"]
