"""Entry point for `python app.py` and Hugging Face Spaces: settings from the environment, serve."""

from chatlm.config import Settings
from chatlm.server import serve

if __name__ == "__main__":
    import os

    # Spaces routes traffic to 0.0.0.0:7860; locally we stay on 127.0.0.1 unless told otherwise.
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else None
    serve(Settings.from_env(host=host))
