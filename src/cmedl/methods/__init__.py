"""Training methods (each owns its networks and optimisers), their registry and checkpoint loading.

- :mod:`cmedl.methods.registry`: every method by name; :func:`parse_config` / :func:`load_config`
  assemble a checked :class:`~cmedl.config.TrainConfig` from the common and method sections;
  :func:`build_method` instantiates the configured method.
- :mod:`cmedl.methods.checkpoints`: networks from a checkpoint (test-time model, generators).
- One module per method (``ct_only``, ``cmedl``, ``ct_only_3d``); translators in ``translators/``.
"""

from cmedl.methods.base import Method
from cmedl.methods.checkpoints import (
    build_generator_from_checkpoint,
    build_student_from_checkpoint,
    build_test_time_model,
)
from cmedl.methods.cmedl import CMEDL, CMEDLConfig
from cmedl.methods.ct_only import CTOnly
from cmedl.methods.ct_only_3d import CTOnly3D
from cmedl.methods.image_pool import ImagePool
from cmedl.methods.recipe import STUDENT, TestTimeModel, TestTimeRecipe
from cmedl.methods.registry import (
    build_method,
    describe_methods,
    get_method,
    load_config,
    method_names,
    parse_config,
    register_method,
    unregister_method,
)
from cmedl.methods.translators import TRANSLATORS, CycleGANConfig, CycleGANTranslator

__all__ = [
    "CMEDL", "STUDENT", "TRANSLATORS", "CMEDLConfig", "CTOnly", "CTOnly3D", "CycleGANConfig", "CycleGANTranslator",
    "ImagePool", "Method", "TestTimeModel", "TestTimeRecipe", "build_generator_from_checkpoint", "build_method",
    "build_student_from_checkpoint", "build_test_time_model", "describe_methods", "get_method", "load_config",
    "method_names", "parse_config", "register_method", "unregister_method",
]
