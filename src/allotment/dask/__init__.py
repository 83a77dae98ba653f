"""Dask clusters run by Allotment: ``AllotmentCluster`` (its scheduler and workers are your
workloads, admitted within your account's quota and charged to it). docs/dask.md."""

from __future__ import annotations

from allotment.dask.cluster import AllotmentCluster, ClusterFailed

__all__ = ["AllotmentCluster", "ClusterFailed"]
