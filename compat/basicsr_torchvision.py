"""Let BasicSR 1.4.2 import under torchvision >= 0.17.

BasicSR imports ``torchvision.transforms.functional_tensor``, a private module that torchvision
removed. Registering the public ``functional`` module under the old name is enough: BasicSR only
uses ``rgb_to_grayscale`` from it. Import this module before anything from ``basicsr``.
"""

import sys

import torchvision.transforms.functional as _functional

_OLD_NAME = "torchvision.transforms.functional_tensor"
try:
    import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
except ImportError:
    sys.modules[_OLD_NAME] = _functional
