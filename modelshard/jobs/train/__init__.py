"""The train job by where its code runs: ``task`` (the mappers' side) and ``reduce_task``
(the reducers') inside the YARN containers; ``driver`` on the edge node, submitting the job
and committing its result."""
