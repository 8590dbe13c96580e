"""Figures and Markdown reports, built only from saved results."""

from easyhard.report.theory import exponent_table, mse_table, plot_loss_curves, render_markdown

__all__ = ["exponent_table", "mse_table", "plot_loss_curves", "render_markdown"]
