"""easel's core nodes, one built-in plugin per ComfyUI category: :mod:`.loaders`,
:mod:`.conditioning`, :mod:`.sampling`, :mod:`.latent` and :mod:`.image`. Each module
registers its node types through ``easel_node_types`` and is listed in
``runner.plugin_manager.DEFAULT_PLUGINS``; this package itself is not a plugin. What they
share lives in :mod:`runner.diffusion` (the sampling loop, samplers, prompt encoding,
resizing) and :mod:`runner.handles` (MODEL, CLIP, VAE, CONDITIONING, LATENT)."""
