"""Every model module is imported here explicitly, so `zoo list` and `create_model` always see all of them."""
from . import gaussian_ae  # noqa: F401
from . import lenet  # noqa: F401
from . import gan  # noqa: F401
from . import kmeans  # noqa: F401
from . import competitive  # noqa: F401
from . import mixture  # noqa: F401
from . import linear  # noqa: F401
from . import translit  # noqa: F401
from . import graph_transformer  # noqa: F401
from . import pointnet  # noqa: F401
