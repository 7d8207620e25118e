"""Contracts: the typed records that cross stage boundaries, the configuration, the data schema, the
artifact layout and the run index. The bottom layer: it imports nothing of recforge's other packages.

Importing it also sets one process-wide option that must precede torch's first allocation (below); the
packages whose modules import torch import this package first.
"""

import os

# torch reads this once, at its first CPU allocation: tensors of 2 MB and more are then backed by
# transparent huge pages, so the kernel faults a fresh tensor in 512 times less often. Evaluation
# allocates several (users x catalogue) score tensors per batch; at 10^5+ items those page faults were
# a large share of its time (docs/scaling.md). Set THP_MEM_ALLOC_ENABLE=0 to keep 4 KB pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
