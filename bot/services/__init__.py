"""The service layer: joins a user's request, their stored data and the runner.

Cogs and the command line call these modules; they hold no Discord or click code. For
stored data: ``database`` opens the database for the settings in force (migrated),
``lora_files`` checks uploaded LoRA files, ``loras`` is the per-user LoRA library,
``history`` records generations and finds them again, ``userdata`` exports and forgets a
user, ``storage`` keeps files by content hash under the data folder.
"""
