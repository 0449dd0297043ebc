from rnnsweep.entry import main

main()
