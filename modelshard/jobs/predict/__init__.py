"""The predict job by where its code runs: ``task`` inside the YARN containers; ``driver`` on
the edge node, submitting the job and committing its result."""
