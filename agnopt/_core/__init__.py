"""The core every family builds on: array backends (``backend``), parameter trees
(``tree``), results and statuses (``result``), laziness and host transfers
(``lazy``), checkpoints (``checkpoint``) and the exceptions raised to users
(``errors``)."""
