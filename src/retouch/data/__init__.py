"""Dataset builders: the multi-task compositing benchmark (:mod:`retouch.data.compositing`) and its
synthetic natural-statistics images (:mod:`retouch.data.dead_leaves`)."""
