"""OGC SensorThings API 1.1 (OGC 18-088) at ``/sta/v1.1``: the data model (``model``), the query
language (``query``: $filter, $expand, $select, $orderby …), reads, writes, $batch, DataArray."""
