"""Widgets of the wizard and the template browser."""
