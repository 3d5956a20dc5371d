"""kframes' own packages, in layers (imports go one way, top to bottom; tests/test_layers.py keeps it so):

- `pipeline.cli`: the `kframes` command;
- `pipeline.orchestration`: `kframes run`, the select stage, the demo, Slurm submission;
- `pipeline.evaluation`: benchmark loaders, the evaluation loop, reports;
- `pipeline.inference`: the trained selector, the baseline frame selectors, the lmms-eval model;
- then the top-level `stages`, `rewards` and `data_builder` packages;
- `pipeline.core`: contracts, recipes, the one prompt renderer and output parser, the any-k sampler, models, io.
"""
