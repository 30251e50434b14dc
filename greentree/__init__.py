"""greentree: Erlang/OTP supervision trees for gevent.

>>> import greentree
>>> sorted(greentree.__all__)[:3]
['AlreadyPresentError', 'AlreadyRegisteredError', 'AlreadyStartedError']
"""

from ._base import ChildCounts as ChildCounts
from ._base import ChildInfo as ChildInfo
from ._child import Greenlet as Greenlet
from ._child import started as started
from ._cluster import Cluster as Cluster
from ._cluster import ClusterName as ClusterName
from ._cluster import ClusterUnavailableError as ClusterUnavailableError
from ._cluster import NodeInfo as NodeInfo
from ._cluster import Owner as Owner
from ._cluster_supervisor import ClusterChild as ClusterChild
from ._cluster_supervisor import ClusterSupervisor as ClusterSupervisor
from ._dynamic import DynamicSupervisor as DynamicSupervisor
from ._errors import AlreadyPresentError as AlreadyPresentError
from ._errors import AlreadyRegisteredError as AlreadyRegisteredError
from ._errors import AlreadyStartedError as AlreadyStartedError
from ._errors import ArgumentError as ArgumentError
from ._errors import BlockingCallError as BlockingCallError
from ._errors import CallTimeoutError as CallTimeoutError
from ._errors import ChildNotFoundError as ChildNotFoundError
from ._errors import ChildRestartingError as ChildRestartingError
from ._errors import ChildRunningError as ChildRunningError
from ._errors import ChildSpecError as ChildSpecError
from ._errors import GreentreeError as GreentreeError
from ._errors import GreentreeTimeoutError as GreentreeTimeoutError
from ._errors import MaxChildrenError as MaxChildrenError
from ._errors import NotRunningError as NotRunningError
from ._errors import RestartIntensityExceeded as RestartIntensityExceeded
from ._errors import StartChildError as StartChildError
from ._errors import StartTimeoutError as StartTimeoutError
from ._exits import ShutdownExit as ShutdownExit
from ._instance_manager import InstanceManager as InstanceManager
from ._instance_record import Instance as Instance
from ._instance_reshard import reshard as reshard
from ._instance_spec import InstanceExistsError as InstanceExistsError
from ._instance_spec import InstanceNotFoundError as InstanceNotFoundError
from ._instance_spec import InstanceValueError as InstanceValueError
from ._instance_spec import InvalidTransitionError as InvalidTransitionError
from ._instance_spec import StateMachine as StateMachine
from ._instance_spec import StoreCorruptError as StoreCorruptError
from ._instance_spec import StoreError as StoreError
from ._instance_spec import StoreMismatchError as StoreMismatchError
from ._partition import PartitionKeyError as PartitionKeyError
from ._partition import PartitionSupervisor as PartitionSupervisor
from ._partition import partition_for as partition_for
from ._policy import AutoShutdown as AutoShutdown
from ._policy import Exit as Exit
from ._policy import Restart as Restart
from ._policy import Strategy as Strategy
from ._registry import Registry as Registry
from ._registry import RegistryError as RegistryError
from ._run import run as run
from ._server import NOREPLY as NOREPLY
from ._server import Caller as Caller
from ._server import Server as Server
from ._spec import BRUTAL_KILL as BRUTAL_KILL
from ._spec import ChildSpec as ChildSpec
from ._supervisor import Supervisor as Supervisor
from ._task import Task as Task
from ._task import TaskCancelledError as TaskCancelledError
from ._task import TaskSupervisor as TaskSupervisor
from ._task import TaskTimeoutError as TaskTimeoutError
from ._task import await_many as await_many

__version__ = "0.1.0.dev0"

__all__ = [
    "AlreadyPresentError", "AlreadyRegisteredError", "AlreadyStartedError", "ArgumentError", "AutoShutdown",
    "BRUTAL_KILL", "BlockingCallError", "CallTimeoutError", "Caller", "ChildCounts", "ChildInfo",
    "ChildNotFoundError", "ChildRestartingError", "ChildRunningError", "ChildSpec", "ChildSpecError",
    "Cluster", "ClusterChild", "ClusterName", "ClusterSupervisor", "ClusterUnavailableError", "DynamicSupervisor", "Exit", "Greenlet",
    "GreentreeError", "GreentreeTimeoutError", "Instance", "InstanceExistsError", "InstanceManager",
    "InstanceNotFoundError", "InstanceValueError", "InvalidTransitionError", "MaxChildrenError", "NOREPLY",
    "NodeInfo", "NotRunningError", "Owner", "PartitionKeyError", "PartitionSupervisor", "Registry",
    "RegistryError", "Restart", "RestartIntensityExceeded", "Server", "ShutdownExit", "StartChildError",
    "StartTimeoutError", "StateMachine", "StoreCorruptError", "StoreError", "StoreMismatchError", "Strategy",
    "Supervisor", "Task", "TaskCancelledError", "TaskSupervisor", "TaskTimeoutError", "await_many",
    "partition_for", "reshard", "run", "started",
]
