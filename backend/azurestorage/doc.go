// Package azurestorage is dronehub's Azure Storage task hub: durabletask-go's
// backend contract on Azure queues, tables and blobs, shared by many workers.
package azurestorage

import (
	_ "github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	_ "github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	_ "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	_ "github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
)
