"""greentree: Erlang/OTP supervision trees for gevent.

>>> import greentree
>>> sorted(greentree.__all__)[:3]
['AlreadyPresentError', 'AlreadyRegisteredError', 'AlreadyStartedError']
"""

from ._base import ChildCounts as ChildCounts
from ._base import ChildInfo as ChildInfo
from ._child import Greenlet as Greenlet
from ._child import started as started
from ._dynamic import DynamicSupervisor as DynamicSupervisor
from ._errors import AlreadyPresentError as AlreadyPresentError
from ._errors import AlreadyRegisteredError as AlreadyRegisteredError
from ._errors import AlreadyStartedError as AlreadyStartedError
from ._errors import BlockingCallError as BlockingCallError
from ._errors import ChildNotFoundError as ChildNotFoundError
from ._errors import ChildRestartingError as ChildRestartingError
from ._errors import ChildRunningError as ChildRunningError
from ._errors import ChildSpecError as ChildSpecError
from ._errors import GreentreeError as GreentreeError
from ._errors import MaxChildrenError as MaxChildrenError
from ._errors import NotRunningError as NotRunningError
from ._errors import RestartIntensityExceeded as RestartIntensityExceeded
from ._errors import StartChildError as StartChildError
from ._exits import ShutdownExit as ShutdownExit
from ._run import run as run
from ._spec import BRUTAL_KILL as BRUTAL_KILL
from ._spec import AutoShutdown as AutoShutdown
from ._spec import ChildSpec as ChildSpec
from ._spec import Restart as Restart
from ._spec import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor

__version__ = "0.1.0.dev0"

__all__ = [
    "AlreadyPresentError", "AlreadyRegisteredError", "AlreadyStartedError", "AutoShutdown",
    "BRUTAL_KILL", "BlockingCallError", "ChildCounts", "ChildInfo", "ChildNotFoundError",
    "ChildRestartingError", "ChildRunningError", "ChildSpec", "ChildSpecError",
    "DynamicSupervisor", "Greenlet", "GreentreeError", "MaxChildrenError", "NotRunningError",
    "Restart", "RestartIntensityExceeded", "ShutdownExit", "StartChildError", "Strategy",
    "Supervisor", "run", "started",
]
