"""SmileKit: is each person in a photo smiling? A small CNN, a Voilà app, and a feedback loop."""

__version__ = "0.1.0"
