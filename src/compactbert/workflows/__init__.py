"""One module per verb's workflow: what ``compactbert VERB`` (and ``compactbert.VERB``) does.

``finetune``, ``compress``, ``evaluate``, ``size``, ``export`` (and ``load``) and ``bench`` live here;
``report`` is :func:`compactbert.report.core.report`. They open their paths with
:func:`compactbert.runs.open_path`, load models with :mod:`compactbert.loading`, share the run
directory's life cycle (:mod:`.rundir`) and take their defaults from :mod:`compactbert.defaults`.
:mod:`compactbert.api` re-exports the verbs; nothing here imports the API.
"""
