"""The test bed: real RabbitMQ, S3 (SeaweedFS) and Kubernetes API servers on loopback.

Used by the pytest fixtures (tests/conftest.py), the demo and the benchmarks, and by a person:
`python -m testbed up` starts the services and prints the environment to reach them. Every service
binds 127.0.0.1 on free ports, keeps its data and logs in one run directory, and stops with its
process group. Nothing here is shipped in the kompressor distribution.
"""

from testbed.kube import KubeAPI, start_kube
from testbed.rabbitmq import RabbitMQ, start_rabbitmq
from testbed.s3 import S3Server, start_s3

__all__ = ["KubeAPI", "RabbitMQ", "S3Server", "start_kube", "start_rabbitmq", "start_s3"]
