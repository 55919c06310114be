"""Model loading, the batching scheduler, sampling and backends. The only package that imports torch
(with training/)."""
