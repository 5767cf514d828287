"""The Gradio app's views: layout and formatting of what the engine produced."""
