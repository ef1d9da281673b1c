# a stand-in for the code under test: changing it selects its feature's tests
