"""gglm-fairseq: Gradient-guided Loss Masking for fairseq (``--user-dir``).

Importing the package registers the ``translation_with_clean_set`` task and the
``gradient_masked_cross_entropy`` criterion. fairseq's ``--user-dir`` imports only
``tasks/`` and ``models/`` by itself, so the criterion is imported here.
"""

from gglm_fairseq import criterions, tasks  # noqa: F401  (registration)
from gglm_fairseq.errors import install_excepthook
from gglm_fairseq.quiet import silence_spurious_warnings
from gglm_fairseq.safe_load import allow_fairseq_checkpoints

allow_fairseq_checkpoints()
install_excepthook()  # a user error on the command line: its message on one line, exit 1
silence_spurious_warnings()

__version__ = "0.1.0"
