"""kframes' core: data contracts, configuration, the selector's prompt and output grammar, the any-k
sampler, inference, evaluation, stage orchestration, cluster submission and the `kframes` command.

Everything the training stages, the data builder and the rewards share lives here, so that there is one
definition of a record, one prompt renderer, one output parser and one sampler.
"""
