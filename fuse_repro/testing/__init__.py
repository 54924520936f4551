"""Public test helpers, shared by the test suite and the benchmarks.

``tiny_*``: the tiny random model builders of ``fuse_repro.tiny_models`` (production code:
the ``tiny_*`` model backends), re-exported here.
``toy``: toy tokenizers and embedding tables whose words are t-linear in each other.
"""

from fuse_repro.tiny_models import tiny_clip, tiny_gpt2, tiny_roberta
from fuse_repro.testing.toy import (ToyModel, ToyPair, ToyTokenizer, make_toy_pair, naive_tprod,
                                   planted_adapter, real_shapes_pair, toy_adapter_config)

__all__ = ["tiny_clip", "tiny_gpt2", "tiny_roberta"]
__all__ += ["ToyModel", "ToyPair", "ToyTokenizer", "make_toy_pair", "naive_tprod", "planted_adapter",
            "real_shapes_pair", "toy_adapter_config"]
