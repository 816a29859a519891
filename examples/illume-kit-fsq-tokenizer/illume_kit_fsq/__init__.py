"""An illume-kit plugin shipped as its own pip package (the README's worked example)."""
