"""The one part of the build that pyproject.toml cannot declare without a warning: the C extension.

``enumwatch.audit._typed`` is the typed decoder of audit events (see
``operator/enumwatch/audit/decode.py``): one pass from an event's bytes to its fields, its time
and its identity. pip builds it (``make venv``, in place for the editable install; the image's
builder stage) with the system's C compiler and Python's headers; everything else about the
package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "enumwatch.audit._typed",
            sources=["operator/enumwatch/audit/_typed.c"],
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
