"""Flows: the collector (per-interval deltas and totals from the flow map), the text and
JSON renderers, the live table.

Rule: no outside library but numpy (and rich for the live table); it reads the kernel only
through kernel.FlowSource and never imports the export or attach packages.
"""
