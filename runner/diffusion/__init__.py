"""The diffusers-backed pieces the core nodes (``plugins/core/``) are built from, kept out of
``plugins/`` because they are not plugins: ComfyUI sampler/scheduler names mapped onto
diffusers schedulers (:mod:`.samplers`), the one sampling loop (:mod:`.sampling`) and the
grouping of several jobs' sampler calls into it (:mod:`.batched`), ComfyUI's prompt-weight
encoding (:mod:`.prompt_encoding`), and what the node modules share: the largest image
side and the resizing of latents and images (:mod:`.common`)."""
