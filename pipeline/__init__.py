"""Contracts: the typed records that cross stage boundaries, the configuration, the data schema, the
artifact layout and the run index. The bottom layer: it imports nothing of recforge's other packages.
"""
