"""Job logic for the Hadoop Streaming tasks in ``mr_tasks/``, and how to launch them."""
