"""Running a sweep: the Ray launcher and its workers, the cluster, resources, Hydra
callbacks and the sweep's end. The driver side never imports torch at module level."""
