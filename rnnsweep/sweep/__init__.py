"""Running a sweep: the Ray launcher and its workers, the cluster, resources, the
sweep's context and sinks (terminal, MLflow), stoppers and the sweep's end. The driver
side never imports torch at module level."""
