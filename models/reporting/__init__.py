"""Reporting: statistics over seeds, Markdown tables, plots and strict JSON results."""
