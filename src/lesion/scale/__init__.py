"""Running the sampling engines in shards: on this process or on a Ray cluster (issue 18).

A campaign's configurations are drawn from per-sample seeds, so any range of samples can be evaluated anywhere
and merged by index into the result a single process gives. `executor` holds the seam (`executor_for`, the local
executor), `ray_executor` the Ray one, `store` the record of finished shards that lets an interrupted run resume.
"""
