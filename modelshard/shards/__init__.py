"""Shards: the safetensors file format (:mod:`.format`), the dtypes it holds
(:mod:`.dtypes`) and the planner that balances tensors over shards (:mod:`.planner`)."""
