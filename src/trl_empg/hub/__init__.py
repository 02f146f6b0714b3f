"""The Hub side: the facts of a run (:mod:`.facts`), the model card rendered from them (:mod:`.cards`) and push / pull
of trained agents (:mod:`.push`)."""
