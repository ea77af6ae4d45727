"""ComfyUI's node specs, written down by hand from ComfyUI's source (``nodes.py``,
``comfy_extras/``), one module per area: each module has ``SPECS``, a dict from node type
to ``{input name: {"type": ..., "default": ..., "min": ..., "max": ..., "step": ...,
"choices": [...], "required": bool}}`` with only the keys ComfyUI declares.

``tests/runner/test_comfy_specs.py`` compares every entry with what ``easel nodes --json``
says, so a node's names, defaults and ranges cannot drift from ComfyUI's. Where easel
deliberately differs (a setting lowers a maximum), the module says so in ``EXCEPTIONS``.
"""
