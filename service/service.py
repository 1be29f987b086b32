"""BentoML entry point: `cd service && bentoml serve .` (or `jaxnets serve`).

The service itself lives in the jaxnets package (jaxnets/serving/service.py) so that `jaxnets serve`
works from an installed package too; this file only exposes it where BentoML looks.
"""

from jaxnets.serving.service import JaxnetsClassifier, JaxnetsModel

__all__ = ["JaxnetsClassifier", "JaxnetsModel"]
