"""The diffusers-backed pieces the core nodes are built from, kept out of ``plugins/`` because
they are not plugins: ComfyUI sampler/scheduler names mapped onto diffusers schedulers
(:mod:`.samplers`), the sampling loop (:mod:`.sampling`, :mod:`.batched`) and ComfyUI's
prompt-weight encoding (:mod:`.prompt_encoding`)."""
