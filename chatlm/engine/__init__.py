"""Model loading, the batching scheduler, sampling and backends: where the model runs (torch's thread
policy, which the knowledge embedder follows too, is ``chatlm.torch_threads``)."""
