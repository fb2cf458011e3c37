"""The Python-backend models of a generated Triton repository. Each repository ``model.py`` is one
import of a module here, so the code is this package's (tested, versioned) and runs in the server's
Python environment, which must have autotimm-deploy installed. ``triton_python_backend_utils``
exists only inside Triton's Python backend stub: it is imported there, never at import time here."""
