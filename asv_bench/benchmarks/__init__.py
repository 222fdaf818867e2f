"""asv benchmarks for agnopt (see asv_bench/asv.conf.json)."""
