from rnnsweep.cli import main

main()
