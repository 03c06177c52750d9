"""kompressor's contract: the CompressionJob spec and status, the task and result messages, the queue
names and the settings groups shared by the operator, local mode and the workers."""

__version__ = "0.1.0"
